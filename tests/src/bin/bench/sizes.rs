//! End to end (and its baseline) across message sizes.

use crate::stack::Bench;
use crate::table::{row_line, Row};
use crate::KB;

impl Bench {
    /// End to end (and its baseline) at 100 B, 1 KB, 10 KB and 100 KB messages.
    pub async fn sizes(&self) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        // ~50-100 MB per run at the default --messages 200000.
        for (size, count) in [
            (100, self.n * 5 / 2),
            (KB, self.n / 2),
            (10 * KB, self.n / 20),
            (100 * KB, self.n / 200),
        ] {
            let count = count.max(10);
            let base = self.baseline(size, count).await?;
            eprintln!("   {}", row_line(&base));
            let e2e = self.e2e(size, count, Some(base.msg_per_s())).await?;
            rows.push(base);
            rows.extend(e2e);
        }
        Ok(rows)
    }
}
