"""A small Python client of a site's search server (proto/search.proto).

Example::

    with SearchClient("hospital-a:50061", ca_cert="pki/ca.crt", cert="me.crt", key="me.key") as client:
        answer = client.search([Query(image=features, text=None)], k=10)
        print(answer.model_version, [(h.record_id, h.distance) for h in answer.hits[0]])
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from participant.search_types import Hit, SearchAnswer
from proto import search_pb2 as spb
from proto import search_pb2_grpc as spb_grpc


@dataclass(frozen=True)
class Query:
    """One query record; None for a modality it lacks. Shape: image (d_img,), text (d_txt,)."""

    image: np.ndarray | Sequence[float] | None
    text: np.ndarray | Sequence[float] | None


class SearchClient:
    """Mutual-TLS client: ``ca_cert`` verifies the server; ``cert``/``key`` are this client's, from the
    CA the site named as ``search.client_ca``.

    Raises (from calls):
        grpc.RpcError: UNAVAILABLE when the handshake fails (e.g. a certificate of another CA),
            INVALID_ARGUMENT for a malformed query (the details say why).
    """

    def __init__(self, address: str, *, ca_cert: str | Path, cert: str | Path, key: str | Path,
                 server_name: str = "localhost", timeout_s: float = 10.0) -> None:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(ca_cert).read_bytes(),
                                             private_key=Path(key).read_bytes(),
                                             certificate_chain=Path(cert).read_bytes())
        self.channel = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", server_name)])
        self.stub = spb_grpc.SearchStub(self.channel)
        self.timeout_s = timeout_s

    def search(self, queries: Sequence[Query], k: int = 10) -> SearchAnswer:
        request = spb.SearchRequest(k=k, queries=[
            spb.Query(image=[] if q.image is None else np.asarray(q.image, np.float32).tolist(),
                      text=[] if q.text is None else np.asarray(q.text, np.float32).tolist()) for q in queries])
        reply = self.stub.Search(request, timeout=self.timeout_s)
        hits = [[Hit(h.record_id, h.row, h.distance, tuple(h.labels) or None) for h in r.hits]  # proto ints are ints
                for r in reply.results]
        return SearchAnswer(hits, reply.model_version, reply.generation, int(reply.archive_size), reply.record_ids)

    def stats(self) -> spb.StatsReply:
        return self.stub.Stats(spb.StatsRequest(), timeout=self.timeout_s)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
