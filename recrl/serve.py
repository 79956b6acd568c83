"""Serve a trained policy over HTTP (LitServe, Lightning's serving library, with dynamic batching).

    python -m recrl.serve <run folder> [--host 127.0.0.1] [--port 8000]

- ``POST /recommend`` ``{"history": [item ids, oldest first], "k": 10, "exclude": [item ids]}``
  -> ``{"items": [...], "scores": [...], "fallback": false}``: the policy's top-k after that
  history, items in the history and in ``exclude`` left out; an empty history gets the run's
  most-popular items, ``"fallback": true``.
- ``GET /health``: ``ok`` once the model is loaded; ``GET /info``: the run, its catalogue and
  encoder.

Item ids are those of the run's log (`recrl.inference`). Requests that arrive together are
scored as one batch (``--max-batch-size``, ``--batch-timeout``). Bad requests get a 4xx naming the
problem: malformed JSON or fields (422), unknown items, ``k`` outside ``1..N``, a history longer
than ``--max-history`` (400), a body over ``--max-body-bytes`` (413), a missing or wrong token
(401, when ``RECRL_SERVE_TOKEN`` is set: ``Authorization: Bearer <token>`` on every request).
The server binds to 127.0.0.1 unless ``--host`` says otherwise.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time
# to give FastAPI the request model (a string annotation would make it a query parameter).
import argparse
import hmac
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from fastapi import HTTPException
from pydantic import BaseModel, Field
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from recrl.inference import RunLoadError, TrainedPolicy, load_run, run_summary

#: The environment variable holding the bearer token every request must carry (unset: none).
TOKEN_ENV = "RECRL_SERVE_TOKEN"


class RecommendRequest(BaseModel):
    """The body of ``POST /recommend`` (FastAPI rejects anything else with a 422)."""

    history: list[int | str] = Field(default_factory=list)
    k: int = 10
    exclude: list[int | str] = Field(default_factory=list)


class RecommenderAPI(ls.LitAPI):
    """Decode (validate, map ids) -> batch -> score -> top-k -> encode, for one policy."""

    def __init__(self, run_dir: Path, *, checkpoint: str, run_data: str | None,
                 max_history: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_dir, self.checkpoint, self.run_data = run_dir, checkpoint, run_data
        self.max_history = max_history

    def setup(self, device: str) -> None:
        torch.set_grad_enabled(False)
        self.policy: TrainedPolicy = load_run(self.run_dir, data_path=self.run_data,
                                              checkpoint=self.checkpoint)
        self.index_of = self.policy.index_of()
        # Ids come as JSON numbers or strings: accept either spelling of an integer id.
        self.index_of.update({str(item): index for item, index in list(self.index_of.items())})
        popular = self.policy.popularity.clone()
        popular[0] = float("-inf")
        self.popular = popular

    def _indices(self, items: list[int | str], field: str) -> list[int]:
        unknown = [item for item in items if item not in self.index_of]
        if unknown:
            raise HTTPException(400, f"{field}: unknown item id(s) {unknown[:5]} (the run's "
                                     f"catalogue has {self.policy.num_items} items)")
        return [self.index_of[item] for item in items]

    def decode_request(self, request: RecommendRequest) -> dict[str, Any]:
        N = self.policy.num_items
        if not 1 <= request.k <= N:
            raise HTTPException(400, f"k must be between 1 and the catalogue size {N}, "
                                     f"got {request.k}")
        if len(request.history) > self.max_history:
            raise HTTPException(400, f"history has {len(request.history)} items, at most "
                                     f"{self.max_history} are accepted (the policy reads the "
                                     f"last {self.policy.history_length})")
        history = self._indices(request.history, "history")
        exclude = self._indices(request.exclude, "exclude")
        L = self.policy.history_length
        window = history[-L:]
        row = torch.zeros(L, dtype=torch.int64)
        if window:
            row[L - len(window):] = torch.tensor(window)
        return {"history": row, "mask": sorted(set(history) | set(exclude)), "k": request.k}

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return inputs

    def predict(self, inputs: list[dict[str, Any]] | dict[str, Any]) -> list[dict[str, Any]]:
        batch = inputs if isinstance(inputs, list) else [inputs]
        history = torch.stack([x["history"] for x in batch])  # [B, L]
        scores = self.policy.scores(history).float().cpu()  # [B, N+1]
        cold = (history == 0).all(dim=1)
        scores = torch.where(cold[:, None], self.popular, scores)
        scores[:, 0] = float("-inf")
        outputs = []
        for row, x in enumerate(batch):
            row_scores = scores[row]
            if x["mask"]:
                row_scores = row_scores.index_fill(0, torch.tensor(x["mask"]), float("-inf"))
            top = row_scores.topk(x["k"])
            finite = torch.isfinite(top.values)
            outputs.append({"items": self.policy.item_ids[top.indices[finite].numpy()].tolist(),
                            "scores": top.values[finite].tolist(),
                            "fallback": bool(cold[row])})
        return outputs if isinstance(inputs, list) else outputs[0]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


class BearerTokenMiddleware(BaseHTTPMiddleware):
    """``Authorization: Bearer <token>`` required on every request (health and info included);
    compared in constant time."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.expected = f"Bearer {token}".encode()

    async def dispatch(self, request: Request, call_next: Any) -> Any:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self.expected):
            return JSONResponse({"detail": f"missing or wrong bearer token (set by {TOKEN_ENV})"},
                                status_code=401)
        return await call_next(request)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recrl.serve",
                                     description="Serve a trained policy over HTTP.")
    parser.add_argument("run", type=Path, help="a finished run folder (outputs/<date>/<time>)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--checkpoint", default="policy", choices=["policy", "last"])
    parser.add_argument("--run-data", default=None, help="the run's own log, if it moved")
    parser.add_argument("--max-batch-size", type=int, default=64,
                        help="requests scored together at most (1: no batching)")
    parser.add_argument("--batch-timeout", type=float, default=0.002,
                        help="seconds a batch waits to fill up")
    parser.add_argument("--max-history", type=int, default=1000,
                        help="longest history accepted (items)")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000)
    return parser.parse_args(argv)


def build_server(args: argparse.Namespace) -> ls.LitServer:
    """The LitServer of ``args``; the model is checked here, in the main process, so that a
    run folder without a usable checkpoint fails at start-up with one line."""
    policy = load_run(args.run, data_path=args.run_data, checkpoint=args.checkpoint)
    api = RecommenderAPI(args.run, checkpoint=args.checkpoint, run_data=args.run_data,
                         max_history=args.max_history, api_path="/recommend",
                         max_batch_size=args.max_batch_size,
                         batch_timeout=args.batch_timeout if args.max_batch_size > 1 else 0.0)
    middlewares: list[Any] = [(ls.middlewares.MaxSizeMiddleware, {"max_size": args.max_body_bytes})]
    token = os.environ.get(TOKEN_ENV)
    if token:
        middlewares.append((BearerTokenMiddleware, {"token": token}))
    return ls.LitServer(api, accelerator="cpu", model_metadata=run_summary(policy),
                        middlewares=middlewares)


def stop_gracefully_on_sigterm() -> None:
    """SIGTERM shuts down like Ctrl+C: LitServe then stops its uvicorn and inference worker
    processes. (Its default on SIGTERM is to die alone and leave those workers running.)"""

    main_process = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != main_process:  # a forked worker: LitServe stops it with SIGTERM
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        server = build_server(args)
    except RunLoadError as error:
        raise SystemExit(f"recrl.serve: {error}") from None
    stop_gracefully_on_sigterm()
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
