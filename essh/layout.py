"""The ESSH deploy layout shared by the graphs, the decoder and exported ONNX files (no MXNet needed).

9 outputs: ``[cls, bbox, landmark]`` for each of the strides 32, 16, 8, with ``NUM_ANCHORS`` anchors per
position (see :mod:`essh.symbols`).
"""
STRIDES = (32, 16, 8)
NUM_ANCHORS = 2

ESSH_OUTPUT_PREFIX = "rpn"          # rpn_cls_prob_reshape_stride32, rpn_kpoint_pred_stride8, ...
RETINAFACE_OUTPUT_PREFIX = "face_rpn"  # face_rpn_cls_prob_reshape_stride32, face_rpn_landmark_pred_stride8, ...
