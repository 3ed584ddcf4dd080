"""Graph/weights-separated lowering: lower a module with weights as inputs, then splice them back.

    info = lower(module, {"prefill_8": {...}, "decode": {...}}, "graph.tflite")
    report = splice_weights("graph.tflite", "model.tflite", weights, "int4", component="decoder")

`lower` (export.py) costs ~constant memory whatever the model size; `splice_weights`
(splice.py) streams one weight chunk at a time through the quantizer into the file or into
external weight files (external.py). See LITERT.md "Graph/weights separation".
"""

from converters.lowering.export import GraphInfo, LoweringError, lower
from converters.lowering.external import LITERTLM_GROUP, ExternalWeightsError, check_files, relink
from converters.lowering.sources import SafetensorsSource
from converters.lowering.splice import SpliceReport, WeightRecord, splice_weights

__all__ = ["GraphInfo", "LoweringError", "lower", "LITERTLM_GROUP", "ExternalWeightsError", "check_files", "relink",
           "SafetensorsSource", "SpliceReport", "WeightRecord", "splice_weights"]
