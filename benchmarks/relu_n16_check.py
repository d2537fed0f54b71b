"""relu at N = 16 inputs (8 dims, seed 1), depth 10, width 32: is the fold's integration_error real?

Compares the default rule against accuracy="high" and prints the per-layer
``integration_error`` and the propagated two-rule ``error`` (benchmarks/README.md,
"Theory engine cost (#15)"). ~15 CPU minutes.

The default now evaluates ReLU-family averages in closed form
(``pdlt.gaussian._orthant``), at every accuracy; the "high" reference here is
the independent split path (``_multi._ORTHANT = False``), as before.
``benchmarks/relu_orthant.py`` times the two paths side by side.
"""
import numpy as np, pdlt, time
import pdlt.gaussian._multi as multi
x = np.random.default_rng(1).standard_normal((16, 8))
m = pdlt.MLP(n0=8, width=32, depth=10, activation="relu", C_W=2.0, C_b=0.0)
t=time.process_time(); d = pdlt.statistics(m, x, get=["V","G1"], error=True); t1=time.process_time()-t
print("default+error CPU", t1, flush=True)
ie = np.asarray(d.integration_error)
print("integration_error/scale(V) per layer", np.array2string(ie/np.abs(d.V).reshape(10,-1).max(1), precision=1), flush=True)
for k in ("V","G1"):
    print(k, "error estimate/scale", np.array2string(np.asarray(d.error[k]).reshape(10,-1).max(1)/np.abs(d[k]).reshape(10,-1).max(1), precision=1), flush=True)
multi._ORTHANT = False      # the split path: an independent reference
t=time.process_time(); h = pdlt.statistics(m, x, get=["V","G1"], accuracy="high"); t2=time.process_time()-t
multi._ORTHANT = True
print("high CPU", t2)
for k in ("V","G1"):
    diff = np.abs(d[k]-h[k]).reshape(10,-1).max(1)/np.abs(h[k]).reshape(10,-1).max(1)
    print(k, "default-high/scale", np.array2string(diff, precision=1))
