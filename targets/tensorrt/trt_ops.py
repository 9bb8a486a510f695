"""Which ONNX ops each TensorRT version's ONNX parser accepts (data, no logic).

Sources:
- Base set: onnx-tensorrt `docs/operators.md` for TensorRT 8.5 GA
  (github.com/onnx/onnx-tensorrt, commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc),
  every operator marked "Y".
- Additions per release: onnx-tensorrt `docs/Changelog.md` (8.6 EA ... 10.15 GA).
- ONNX `DFT`: TensorRT 11.2 (cuFFT-backed), per docs/targets.md; 10.x
  documents `DFT | N`.
Restrictions listed in `RESTRICTIONS` are the ones from operators.md that can
bite our graphs; op_support.py checks them.
"""
from __future__ import annotations

#: Operators marked supported ("Y") in operators.md for TensorRT 8.5.
BASE_8_5: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool
BatchNormalization Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv
ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN
LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization
Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus
Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze
Upsample Where Xor
""".split())

#: (major, minor) -> operators the parser gained in that release.
ADDED: dict[tuple[int, int], frozenset[str]] = {
    (8, 6): frozenset({"GroupNormalization", "LayerNormalization", "IsInf"}),
    (9, 2): frozenset({"Hardmax"}),
    (10, 1): frozenset({"DeformConv"}),
    (10, 4): frozenset({"BlackmanWindow", "HammingWindow", "HannWindow"}),
    (10, 5): frozenset({"STFT"}),  # real-valued only
    (10, 14): frozenset({"Attention"}),
    (10, 15): frozenset({"RotaryEmbedding", "RMSNormalization", "TensorScatter"}),
    (11, 2): frozenset({"DFT"}),
}

#: Input-form restrictions that changed across versions: (op, input index)
#: -> first (major, minor) where a non-constant input is accepted.
TENSOR_INPUT_FROM: dict[tuple[str, int], tuple[int, int]] = {
    ("Slice", 3): (10, 3),      # 10.3: "tensor axes inputs for Slice"
    ("Pad", 3): (10, 4),        # 10.4: "tensor axes for Pad"
    ("Squeeze", 1): (10, 7),    # 10.7: "dynamic axes support for Squeeze and Unsqueeze"
    ("Unsqueeze", 1): (10, 7),
    ("CumSum", 1): (10, 8),     # 10.8: "dynamic axes support ... CumSum"
}

#: Inputs that must always be initializers/constants (operators.md restrictions).
CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {
    "TopK": (1,),               # `K` must be an initializer
    "InstanceNormalization": (1, 2),
}

#: Resize attribute values the parser implements (operators.md).
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORD_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})

#: 2D or 3D only (operators.md): input rank 4 or 5.
SPATIAL_2D_3D = frozenset({"Conv", "ConvTranspose", "AveragePool", "MaxPool"})


def supported_ops(version: tuple[int, int]) -> frozenset[str]:
    """All standard-domain ops the parser of TensorRT `version` (major, minor) accepts."""
    ops = set(BASE_8_5)
    for since, added in ADDED.items():
        if version >= since:
            ops |= added
    return frozenset(ops)


def first_version_with(op: str) -> tuple[int, int] | None:
    """The first TensorRT (major, minor) in the table whose parser accepts `op`."""
    if op in BASE_8_5:
        return (8, 5)
    found = [since for since, added in ADDED.items() if op in added]
    return min(found) if found else None
