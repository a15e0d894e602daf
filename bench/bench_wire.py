"""Wire-format benchmark: encoding (client) and decoding (server) a request body, JSON against .npy.

    python bench/bench_wire.py [--rows 1 1024] [--repeats 15]

Decoding is what the service does before any model work: JSON is parsed and validated by the strict schema
(`PredictRequest.model_validate_json`); `.npy` is read with `mcdrop.wire.decode_npy` and validated by the same
schema.  Encoding is the client's: 9-digit JSON text, or `encode_npy`.  Answers: `PredictResult.response()`
serialised as JSON against `encode_result` (a structured .npy).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mcdrop.client import _json_body, build_request
from mcdrop.schemas import PredictRequest, PredictResult
from mcdrop.wire import decode_npy, decode_result, encode_npy, encode_result


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print("| rows | body JSON | body .npy | encode JSON ms | encode .npy ms | decode+validate JSON ms | "
          "decode+validate .npy ms | decode ratio | answer JSON ms | answer .npy ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.rows:
        x = np.random.default_rng(0).uniform(size=(n, 784)).astype(np.float32)
        request, _ = build_request(x, {"n_samples": 50, "seed": 1})
        body_json, body_npy = _json_body(request), encode_npy(x)
        enc_json = median_ms(lambda: _json_body(build_request(x, {"n_samples": 50, "seed": 1})[0]), args.repeats)
        enc_npy = median_ms(lambda: encode_npy(x), args.repeats)
        dec_json = median_ms(lambda: PredictRequest.model_validate_json(body_json), args.repeats)
        dec_npy = median_ms(lambda: PredictRequest.model_validate({"inputs": decode_npy(body_npy), "n_samples": "50",
                                                                   "seed": "1"}, strict=False), args.repeats)
        probs = np.random.default_rng(1).dirichlet(np.ones(10), size=n)
        result = PredictResult(model="m", model_version="1", task="classification", mode="mc", seed=1, columns={
            "predicted_class": probs.argmax(1), "confidence": probs.max(1), "probabilities": probs,
            **{k: probs[:, 0] for k in ("predictive_entropy", "expected_entropy", "mutual_information",
                                        "variation_ratio")},
            "probability_std": probs, "probability_stderr": probs, "n_samples": np.full(n, 50)})
        out_json = median_ms(lambda: result.response().model_dump_json(), args.repeats)
        out_npz = median_ms(lambda: encode_result(result), args.repeats)
        assert decode_result(*encode_result(result)).probabilities.shape == (n, 10)
        print(f"| {n} | {len(body_json):,} | {len(body_npy):,} | {enc_json:.3f} | {enc_npy:.3f} | {dec_json:.3f} | "
              f"{dec_npy:.3f} | {dec_json / dec_npy:.1f}x | {out_json:.3f} | {out_npz:.3f} |")


if __name__ == "__main__":
    main()
