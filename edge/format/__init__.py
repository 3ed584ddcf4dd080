"""What the artifacts are, torch-free: the contract each kind must satisfy (contract.py, with
LiteRT-LM's names in signatures.py), .tflite reading (tflite.py) and structural checks
(tflite_verify.py), .litertlm reading (litertlm.py), and the manifest (manifest.py,
manifest_verify.py)."""
