//! ListParts answers whose root element is `ListPartsResponse` instead of `ListPartsResult`.
//!
//! S3 answers ListParts with `<ListPartsResult>`, and the AWS SDK's parser refuses any other root
//! element: the call fails as a ServiceError with HTTP 200 and no error code. moto's S3 server
//! (5.x) answers `<ListPartsResponse>`, with the same content otherwise, so every resume of a
//! multipart upload failed against it, forever. This interceptor, attached to ListParts calls
//! only, renames that root element before the SDK parses the answer; every other answer passes
//! through byte for byte.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::Frame;

const WRONG_ROOT: &[u8] = b"ListPartsResponse";
const RIGHT_ROOT: &[u8] = b"ListPartsResult";

/// Renames the root element of a ListParts answer (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListPartsRootFix;

impl Intercept for ListPartsRootFix {
    fn name(&self) -> &'static str {
        "list-parts-root-fix"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        // The body is still a stream here (interceptors cannot await), so it is wrapped: the
        // wrapper reads it to its end — the SDK reads a ListParts answer whole anyway — and
        // hands on the renamed bytes.
        let body = context.response_mut().body_mut();
        let inner = std::mem::replace(body, SdkBody::taken());
        *body = SdkBody::from_body_1_x(RenamingBody {
            inner,
            collected: Vec::new(),
            finished: false,
        });
        Ok(())
    }
}

struct RenamingBody {
    inner: SdkBody,
    collected: Vec<u8>,
    finished: bool,
}

impl http_body::Body for RenamingBody {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        loop {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // A ListParts answer has no trailers; data is all there is to keep.
                    if let Ok(data) = frame.into_data() {
                        this.collected.extend_from_slice(&data);
                    }
                }
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => {
                    this.finished = true;
                    let xml = std::mem::take(&mut this.collected);
                    let xml = rename_root(&xml).unwrap_or(xml);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(xml)))));
                }
            }
        }
    }
}

/// `xml` with its root element `ListPartsResponse` (opening and closing tag) renamed to
/// `ListPartsResult`; `None` if the root element is anything else (the answer is left alone).
pub fn rename_root(xml: &[u8]) -> Option<Vec<u8>> {
    let open = root_start(xml)?;
    let name_end = open + 1 + WRONG_ROOT.len();
    let after_name = *xml.get(name_end)?;
    if xml.get(open + 1..name_end)? != WRONG_ROOT
        || !(after_name == b'>' || after_name == b'/' || after_name.is_ascii_whitespace())
    {
        return None;
    }
    let mut closing = b"</".to_vec();
    closing.extend_from_slice(WRONG_ROOT);
    let close = rfind(xml, &closing).filter(|&at| at > name_end);

    let mut out = Vec::with_capacity(xml.len());
    out.extend_from_slice(&xml[..=open]);
    out.extend_from_slice(RIGHT_ROOT);
    match close {
        Some(at) => {
            out.extend_from_slice(&xml[name_end..at + 2]);
            out.extend_from_slice(RIGHT_ROOT);
            out.extend_from_slice(&xml[at + 2 + WRONG_ROOT.len()..]);
        }
        // `<ListPartsResponse/>`: nothing to close.
        None => out.extend_from_slice(&xml[name_end..]),
    }
    Some(out)
}

/// Where the root element's `<` is: after whitespace, the XML declaration, comments and
/// processing instructions (moto's answer starts with a newline before `<?xml`).
fn root_start(xml: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        while xml.get(at)?.is_ascii_whitespace() {
            at += 1;
        }
        let rest = xml.get(at..)?;
        if rest.starts_with(b"<?") {
            at += find(rest, b"?>")? + 2;
        } else if rest.starts_with(b"<!--") {
            at += find(rest, b"-->")? + 3;
        } else if rest.starts_with(b"<") {
            return Some(at);
        } else {
            return None;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// moto 5.2's answer, shortened.
    const MOTO: &str = "\n<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ListPartsResponse xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket><IsTruncated>false</IsTruncated><Part><PartNumber>1</PartNumber><ETag>\"aa\"</ETag><Size>5</Size></Part></ListPartsResponse>";

    #[test]
    fn renames_the_root_of_a_list_parts_response() {
        let fixed = rename_root(MOTO.as_bytes()).expect("renamed");
        assert_eq!(
            String::from_utf8(fixed).expect("utf8"),
            MOTO.replace("ListPartsResponse", "ListPartsResult")
        );
        assert_eq!(
            rename_root(b"<ListPartsResponse/>").as_deref(),
            Some(&b"<ListPartsResult/>"[..])
        );
    }

    #[test]
    fn leaves_every_other_answer_alone() {
        for xml in [
            &b"<?xml version=\"1.0\"?><ListPartsResult><Part/></ListPartsResult>"[..],
            b"<Error><Code>NoSuchUpload</Code><Message>ListPartsResponse</Message></Error>",
            b"<ListPartsResponseX></ListPartsResponseX>",
            b"",
            b"not xml",
            b"<?xml never closed",
        ] {
            assert_eq!(rename_root(xml), None, "{}", String::from_utf8_lossy(xml));
        }
    }

    #[test]
    fn only_the_root_element_is_renamed() {
        let xml = b"<!-- c --><ListPartsResponse><Key>ListPartsResponse</Key></ListPartsResponse>";
        assert_eq!(
            rename_root(xml).as_deref(),
            Some(&b"<!-- c --><ListPartsResult><Key>ListPartsResponse</Key></ListPartsResult>"[..])
        );
    }
}
