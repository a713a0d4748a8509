//! Restore's producer against the broker: every message arrives with the producer name and
//! sequence id it was given (what a deduplicating broker keys on), its payload bytes, key (text
//! or bytes), ordering key, properties and event time; a second producer under the same name
//! continues with the sequence ids it is given, not from 0.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use ingester::restore::producer::{partitions, OutMessage, SequencedProducer};
use ingester::source::trust::PulsarTrust;
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::{Consumer, SubType, TokioExecutor};

use harness::services::pulsar_lite::PulsarLite;

fn message(i: u64) -> OutMessage {
    OutMessage {
        sequence_id: 1000 + i,
        payload: if i.is_multiple_of(3) {
            vec![0xff, 0x00, i as u8]
        } else {
            format!("m{i}").into_bytes()
        },
        key: match i % 4 {
            0 => None,
            1 => Some(format!("k{i}")),
            _ => Some("/wAB".to_string()),
        },
        key_base64: i % 4 >= 2,
        ordering_key: i.is_multiple_of(2).then(|| vec![0, 0xfe, i as u8]),
        properties: vec![
            ("z".to_string(), i.to_string()),
            ("a".to_string(), "é \" x".to_string()),
        ],
        event_time_ms: (!i.is_multiple_of(5)).then_some(1_700_000_000_000 + i),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_with_the_given_producer_name_sequence_ids_and_fields() -> anyhow::Result<()>
{
    let broker = PulsarLite::start().await?;
    let trust = PulsarTrust::default();
    let topic = "persistent://public/default/restore-target";
    // The producer speaks to the broker itself; consumers go through the relay (pulsar-rs).
    let service = format!("pulsar://{}", broker.broker_addr());
    assert_eq!(partitions(&service, None, &trust, topic).await?, 0);

    let pulsar = harness::producer::client(&broker.url()).await?;
    let mut consumer: Consumer<Vec<u8>, TokioExecutor> = pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription("check")
        .with_subscription_type(SubType::Exclusive)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await
        .context("subscribing")?;

    let sent: Vec<OutMessage> = (0..201).map(message).collect();
    let mut producer =
        SequencedProducer::create(&service, None, &trust, topic, "restore-job1-p0").await?;
    assert_eq!(producer.name(), "restore-job1-p0");
    producer.send(&sent[..120]).await?;
    drop(producer);
    // A new connection under the same name goes on with the ids it is given; a lone message
    // goes as itself, not as a batch of one.
    let mut producer =
        SequencedProducer::create(&service, None, &trust, topic, "restore-job1-p0").await?;
    producer.send(&sent[120..200]).await?;
    producer.send(&sent[200..]).await?;

    // pulsar-lite redelivers now and then (docs/dependencies.md §3): a message seen again under
    // its broker id is a redelivery, not something produced twice.
    let mut seen = std::collections::HashSet::new();
    for want in &sent {
        let got = loop {
            let got = tokio::time::timeout(Duration::from_secs(20), consumer.next())
                .await
                .context("no message for 20 s")?
                .context("stream ended")??;
            let id = got.message_id();
            if seen.insert((id.ledger_id, id.entry_id, id.batch_index)) {
                break got;
            }
            consumer.ack(&got).await?;
        };
        let meta = got.metadata();
        assert_eq!(meta.producer_name, "restore-job1-p0");
        // Two batch entries and a plain one. pulsar-rs gives a batch's messages the entry's
        // sequence id (the first); the ids sent here are consecutive, so the batch index
        // finds each one's (its own single-message metadata is checked in the unit tests).
        let (entry_first, entry_last, entry_size) = match want.sequence_id {
            1000..=1119 => (1000, 1119, Some(120)),
            1120..=1199 => (1120, 1199, Some(80)),
            _ => (1200, 1200, None),
        };
        assert_eq!(meta.sequence_id, entry_first);
        assert_eq!(meta.num_messages_in_batch, entry_size);
        if entry_size.is_some() {
            assert_eq!(meta.highest_sequence_id, Some(entry_last));
            let index = got.message_id().batch_index.context("a batch index")?;
            assert_eq!(entry_first + index as u64, want.sequence_id);
        }
        assert_eq!(got.payload.data, want.payload);
        assert_eq!(meta.partition_key, want.key);
        assert_eq!(
            meta.partition_key_b64_encoded.unwrap_or(false),
            want.key_base64
        );
        assert_eq!(meta.ordering_key, want.ordering_key);
        assert_eq!(meta.event_time, want.event_time_ms);
        let props: BTreeMap<_, _> = meta
            .properties
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let want_props: BTreeMap<_, _> = want.properties.iter().cloned().collect();
        assert_eq!(props, want_props);
        consumer.ack(&got).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_counted_and_each_partition_is_produced_to_by_name() -> anyhow::Result<()> {
    let broker = PulsarLite::start_with_partitions(3).await?;
    let trust = PulsarTrust::default();
    let service = format!("pulsar://{}", broker.broker_addr());
    let topic = "persistent://public/default/restore-parted";
    assert_eq!(partitions(&service, None, &trust, topic).await?, 3);
    let mut p = SequencedProducer::create(
        &service,
        None,
        &trust,
        &format!("{topic}-partition-2"),
        "restore-job2-p2",
    )
    .await?;
    p.send(&[message(1), message(2)]).await?;
    let err = SequencedProducer::create("pulsar://h", None, &trust, topic, "x")
        .await
        .err()
        .context("a URL without a port is refused")?;
    assert!(err.to_string().contains("pulsar+ssl://HOST:PORT"), "{err}");
    Ok(())
}
