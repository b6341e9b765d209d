"""ESSH / RetinaFace detector checkpoint -> one ONNX file for the onnxruntime backend."""
from agegender.onnx_export import save_model, symbol_to_onnx

from .detector import ONNX_FAMILY_KEY, ESSHDetector


def export_essh(model, out_path):
    """Export an ESSH-layout detector checkpoint with dynamic batch and image size; the family goes into
    the metadata (``essh.family``)."""
    detector = ESSHDetector(model)
    runner = detector.runner
    onnx_model = symbol_to_onnx(runner.symbol, runner.params, {}, (1, 3, 128, 128), dynamic_axes=(0, 2, 3),
                                metadata={"kind": "essh", ONNX_FAMILY_KEY: detector.family.name, "source": model},
                                graph_name="essh")
    return save_model(onnx_model, out_path)
