"""Evaluates a numpy expression for the Rust tests: the independent reference.

stdin: {"inputs": {name: {"data": [...], "shape": [...], "dtype": "float32"}}, "code": "..."}
The code sees `np` and each input as a numpy array and assigns `out`: an array
or a tuple/list of arrays. stdout: a list of {"data": [...], "shape": [...]}.
"""
import json
import sys

import numpy as np

request = json.load(sys.stdin)
scope = {"np": np}
for name, spec in request["inputs"].items():
    scope[name] = np.array(spec["data"], dtype=spec["dtype"]).reshape(spec["shape"])
exec(request["code"], scope)
out = scope["out"]
outs = out if isinstance(out, (tuple, list)) else [out]
result = []
for value in outs:
    value = np.asarray(value)
    result.append({"data": value.astype(np.float64).ravel().tolist(), "shape": list(value.shape)})
json.dump(result, sys.stdout)
