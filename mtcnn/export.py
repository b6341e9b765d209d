"""MTCNN networks -> ONNX files (``detN.onnx``) for the onnxruntime backend."""
import os

from agegender.checkpoint import checkpoint_paths
from agegender.onnx_export import save_model, symbol_to_onnx

from .detector import EPOCH, onnx_path, read_network
from .symbols import NETWORKS


def export_mtcnn(model_dir, out_dir):
    """Export the MTCNN networks of ``model_dir`` (det1..det3, det4 when present) to ``out_dir/detN.onnx``.

    PNet takes any batch and image size; the others any batch. Returns the written paths.
    """
    written = []
    for name, (_, input_shape) in NETWORKS.items():
        if name == "det4" and not os.path.exists(checkpoint_paths(os.path.join(model_dir, name), EPOCH)[1]):
            continue
        symbol, arg_params = read_network(model_dir, name)
        dynamic = (0, 2, 3) if name == "det1" else (0,)
        onnx_model = symbol_to_onnx(symbol, arg_params, {}, input_shape, dynamic_axes=dynamic,
                                    metadata={"kind": f"mtcnn-{name}", "source": model_dir}, graph_name=name)
        written.append(save_model(onnx_model, onnx_path(out_dir, name)))
    return written
