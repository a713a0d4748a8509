#!/usr/bin/env python3
"""The official client's raw consume + cumulative-ack rate, the baseline row beside pulsar-rs.

Run by tdmq-backup-bench (docs/benchmarks.md), with the pulsar-client wheel from PyPI (the
C++ client under a Python binding): subscribes like the ingester (Exclusive, earliest, receive
queue 1000), receives until COUNT distinct message ids were seen, acknowledging cumulatively
every 1000 messages, and prints one JSON line: seconds from creating the client to the last
acknowledgement, deliveries (redeliveries included) and distinct messages.

    official_consume.py URL TOPIC SUBSCRIPTION COUNT
"""

import json
import sys
import time

import pulsar


def main() -> int:
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    url, topic, subscription, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    started = time.monotonic()
    client = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    consumer = client.subscribe(
        topic,
        subscription,
        consumer_type=pulsar.ConsumerType.Exclusive,
        initial_position=pulsar.InitialPosition.Earliest,
        receiver_queue_size=1000,
        consumer_name="bench-official",
    )
    seen = set()
    deliveries = 0
    since_ack = 0
    while len(seen) < count:
        try:
            message = consumer.receive(timeout_millis=30_000)
        except pulsar.Timeout:
            print(f"no message for 30 s after {len(seen)} of {count}", file=sys.stderr)
            return 1
        deliveries += 1
        mid = message.message_id()
        seen.add((mid.ledger_id(), mid.entry_id(), mid.batch_index(), mid.partition()))
        since_ack += 1
        if since_ack >= 1000 or len(seen) >= count:
            consumer.acknowledge_cumulative(message)
            since_ack = 0
    seconds = time.monotonic() - started
    consumer.close()
    client.close()
    print(json.dumps({"seconds": seconds, "deliveries": deliveries, "messages": len(seen)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
