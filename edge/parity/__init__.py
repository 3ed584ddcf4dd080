"""Does the phone compute what PyTorch computes? The three-way comparison HF / simulator / engine
(run.py), its cases (cases.py) and measures (compare.py, forced_decode.py), the reference's
identity (reference_check.py), the tolerances per weight format (tolerances.py), the quality
verdict on held-out data (evaluate.py) and the reports' pictures (svg.py)."""
