"""Where the search server's CPU goes per query, stage by stage, in-process (no gRPC), old and new paths side by side.

Run: ``python bench/bench_search_handler.py [--size 1000000] [--bits 64] [--calls 300] [--epochs 3]``.

Builds the ``real`` archive of ``bench_retrieval.py`` (Wiki database records, features and codes
tiled to ``--size``, the model trained for ``--epochs``), opens it as ``serve-search`` does, and
times by process CPU (best of 3) one query record at a time through each stage of
``SearchServicer.Search``: decoding the request, encoding the record (torch modules against the
numpy encoder), the index search, and the reply (protobuf message objects with ``SerializeToString``
against ``search_wire.ReplyWriter``), then the whole handler. gRPC's own share is measured by
``bench_retrieval.py --server`` (server CPU per call) minus the handler figure.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_retrieval as br  # noqa: E402


def _cpu_ms(run, items: list) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for item in items:
            run(item)
        best = min(best, time.process_time() - start)
    return best / len(items) * 1e3


def _proto_reply(answer):  # noqa: ANN001, ANN202
    from proto import search_pb2 as spb

    reply = spb.SearchReply(model_version=answer.model_version, generation=answer.generation,
                            archive_size=answer.archive_size, record_ids=answer.has_ids)
    for hits in answer.hits:
        result = reply.results.add()
        for hit in hits:
            result.hits.add(record_id=hit.record_id, row=hit.row, distance=hit.distance, labels=hit.labels or ())
    return reply.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default=str(br.REPO.parent / "shared" / "data" / "wiki.h5"))
    args = parser.parse_args()

    from prometheus_client import CollectorRegistry

    from participant.archive import Archive
    from participant.search_engine import SearchEngine
    from participant.search_server import SearchMetrics, SearchServicer, _queries
    from participant.search_wire import ReplyWriter
    from proto import search_pb2 as spb

    trainer, data = br.trained_model(args.bits, args.data, args.epochs)
    n = args.size
    with tempfile.TemporaryDirectory() as tmp_name:
        state = Path(tmp_name) / "state"
        br.write_site_state(state, trainer, data, n)
        engine = SearchEngine(state, Archive(state / "archive"))
        view = engine.view
        view.index.prepare()
        servicer = SearchServicer(engine, SearchMetrics(CollectorRegistry()))
        q = data.query
        requests = [spb.SearchRequest(k=args.k, queries=[spb.Query(image=q.image[i % len(q)].tolist(),
                                                                   text=q.text[i % len(q)].tolist())])
                    for i in range(args.calls)]
        arrays = [_queries(r, view) for r in requests]
        packed = [view.encode(*a) for a in arrays]
        results = [view.index.search_packed(p, args.k) for p in packed]
        writer = ReplyWriter(view.snapshot, view.model.version)
        answers = [view.search(*a, args.k) for a in arrays]
        for request in requests[:20]:
            servicer.Search(request, None)
        stages = [
            ("decode the request (proto -> arrays)", _cpu_ms(lambda r: _queries(r, view), requests)),
            ("encode: torch modules (SiteModel.encode_packed, before)",
             _cpu_ms(lambda a: view.model.encode_packed(*a), arrays)),
            ("encode: numpy (search_encoder, now)", _cpu_ms(lambda a: view.encode(*a), arrays)),
            (f"search: HammingIndex ({view.index.method})", _cpu_ms(lambda p: view.index.search_packed(p, args.k),
                                                                    packed)),
            ("reply, before: Hit objects (ArchiveView.search minus search_rows)",
             _cpu_ms(lambda a: view.search(*a, args.k), arrays)
             - _cpu_ms(lambda a: view.search_rows(*a, args.k), arrays)),
            ("reply, before: protobuf messages + SerializeToString", _cpu_ms(_proto_reply, answers)),
            ("reply, now: ReplyWriter bytes",
             _cpu_ms(lambda r: writer.reply([writer.result(r.indices[0], r.distances[0])]), results)),
            ("whole handler SearchServicer.Search (now)", _cpu_ms(lambda r: servicer.Search(r, None), requests)),
        ]
        same = all(spb.SearchReply.FromString(writer.reply([writer.result(r.indices[0], r.distances[0])]))
                   == spb.SearchReply.FromString(_proto_reply(a)) for r, a in zip(results, answers, strict=True))
        print(f"{n:,} records, {args.bits} bits, k = {args.k}, {args.calls} one-record requests, CPU ms per request "
              f"(best of 3); replies identical: {same}")
        print("| stage | CPU ms/request |")
        print("|---|---|")
        for name, ms in stages:
            print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
    main()
