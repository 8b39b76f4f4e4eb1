"""``tnrwatch replay classifier``: re-classify the whole log under the current rules.

Reads the log from its beginning to the end it had when the replay started, runs the same
pure step as the service (:func:`services.classifier.pipeline.downstream_event`), and writes
the results to the classifications topic, one Kafka transaction per batch, under a
transactional id of its own. It needs no consumer group and leaves the live classifier's
offsets alone, so the service may keep running. Each re-classification carries the new
``classifier_version`` and the same report id, so the projections replace the old labels of
that report; an interrupted replay is simply run again (outputs have deterministic ids).

Poison records are skipped here: the live classifier already put them in the dead-letter topic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.classifier.narrative import default_lexicon
from services.classifier.pipeline import Classify, classify_incident, downstream_event
from services.classifier.taxonomy import classifier_version, default_act_table
from shared.kafka import ensure_topics, make_producer, read_to_end, replay_consumer, topics_for
from shared.serialization import PoisonEvent, from_record, to_record
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    read: int = 0
    written: int = 0
    skipped_poison: int = 0


async def replay_log(
    settings: Settings, classify: Classify = classify_incident, *, progress: bool = True
) -> ReplayResult:
    await ensure_topics(settings)
    topics = topics_for(settings)
    consumer = replay_consumer(settings, client_id="classifier-replay")
    producer = make_producer(
        settings.model_copy(update={"service_name": "classifier-replay"}),
        transactional_id=f"{settings.topic_prefix}.classifier.replay",
    )
    result = ReplayResult()
    await consumer.start()
    await producer.start()
    try:
        # The log as it is now; later reports are the live service's.
        async for records in read_to_end(consumer, topics.incidents, desc="replay classifier", progress=progress):
            async with producer.transaction():
                for record in records:
                    try:
                        out = downstream_event(from_record(record.value, record.headers), classify)
                    except PoisonEvent:
                        result.skipped_poison += 1
                        continue
                    if out is None:
                        continue
                    key, event = out
                    rec = to_record(event, key=key)
                    await producer.send(topics.classifications, rec.value, key=rec.key, headers=rec.headers)
                    result.written += 1
            result.read += len(records)
    finally:
        await producer.stop()
        await consumer.stop()
    return result


async def replay_classifier(settings: Settings) -> int:
    version = classifier_version(default_act_table(), default_lexicon())
    result = await replay_log(settings)
    print(
        f"re-classified the log under classifier_version {version}: read {result.read} events, "
        f"wrote {result.written}, skipped {result.skipped_poison} poison records (already dead-lettered)"
    )
    return 0
