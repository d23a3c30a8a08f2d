"""Training runs logged to a real MLflow tracking server, for tests/integration/test_mlflow.py.

Run as ``python -m tests.integration.mlflow_runs TRACKING_URI OUT``, in a process of its own so
the test process never imports mlflow (it is heavy and warns on import). It logs two runs of a
scikit-learn classifier converted with skl2onnx (different ``C``, so different answers), with
params and metrics, registers both as versions 1 and 2 of ``iris-clf`` and points the alias
``champion`` at version 1; logs a third, scikit-learn-only (not ONNX) model as version 3; and
writes with ``mlflow.onnx.save_model`` (no server involved) ``OUT/saved`` and ``OUT/mismatch``,
the latter with a signature that disagrees with its graph. Prints a JSON summary.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import mlflow  # noqa: E402
import mlflow.onnx  # noqa: E402
import mlflow.sklearn  # noqa: E402
import numpy as np  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.models.signature import ModelSignature  # noqa: E402
from mlflow.types.schema import Schema, TensorSpec  # noqa: E402
from skl2onnx import to_onnx  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

NAME = "iris-clf"


def main(uri: str, out: Path) -> None:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("lineage-test")
    rng = np.random.default_rng(0)
    x = rng.random((80, 4)).astype(np.float32)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0.6).astype(int)
    summary: dict[str, object] = {"runs": []}
    for c in (0.05, 50.0):
        with mlflow.start_run() as run:
            model = LogisticRegression(C=c).fit(x, y)
            mlflow.log_params({"C": c, "solver": model.solver})
            mlflow.log_metrics({"accuracy": float(model.score(x, y)), "train_rows": len(x)})
            onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}},
                          target_opset=17)
            mlflow.onnx.log_model(onx, name="model", registered_model_name=NAME,
                                  signature=infer_signature(x, model.predict(x)))
            summary["runs"].append({"run_id": run.info.run_id, "C": c,  # type: ignore[union-attr]
                                    "accuracy": float(model.score(x, y))})
            last = onx
    with mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model",
                                 registered_model_name=NAME)
    MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    mlflow.onnx.save_model(last, str(out / "saved"),
                           signature=infer_signature(x, np.zeros(len(x), dtype=np.int64)))
    wrong = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, 3), "X")]))
    mlflow.onnx.save_model(last, str(out / "mismatch"), signature=wrong)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
