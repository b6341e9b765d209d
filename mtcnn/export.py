"""MTCNN networks -> ONNX files (``detN.onnx``) for the onnxruntime backend.

P-, R- and ONet are written in the detector's fast form (:func:`mtcnn.detector.fast_network`, metadata
``mtcnn.form``); LNet in its original layers.
"""
import os

from agegender.checkpoint import checkpoint_paths
from agegender.onnx_export import save_model, symbol_to_onnx

from .detector import EPOCH, ONNX_FORM, ONNX_FORM_KEY, load_fast_network, onnx_path, read_network
from .symbols import NETWORKS


def export_mtcnn(model_dir, out_dir):
    """Export the MTCNN networks of ``model_dir`` (det1..det3, det4 when present) to ``out_dir/detN.onnx``.

    PNet takes any batch and image size; the others any batch. Returns the written paths.
    """
    written = []
    for name, (_, input_shape) in NETWORKS.items():
        if name == "det4" and not os.path.exists(checkpoint_paths(os.path.join(model_dir, name), EPOCH)[1]):
            continue
        metadata = {"kind": f"mtcnn-{name}", "source": model_dir}
        if name == "det4":
            symbol, arg_params = read_network(model_dir, name)
        else:
            symbol, arg_params = load_fast_network(model_dir, name)
            metadata[ONNX_FORM_KEY] = ONNX_FORM
        dynamic = (0, 2, 3) if name == "det1" else (0,)
        onnx_model = symbol_to_onnx(symbol, arg_params, {}, input_shape, dynamic_axes=dynamic,
                                    metadata=metadata, graph_name=name)
        written.append(save_model(onnx_model, onnx_path(out_dir, name)))
    return written
