"""Linear CKA reference values (Kornblith et al. 2019, eq. for linear kernels) for Tests/Fixtures/cka.json.

An independent implementation in NumPy through Gram matrices and HSIC (not the feature-space formula the Swift
code uses): CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X X^T, L = Y Y^T, H = I - 1/n.
Run: python3 Tests/Fixtures/make_cka_fixture.py  (numpy only; CI does not need it)."""
import json
import numpy as np

rng = np.random.default_rng(2021)
n = 40
x = rng.normal(size=(n, 7))
y = 0.5 * x[:, :5] @ rng.normal(size=(5, 5)) + rng.normal(size=(n, 5))
z = rng.normal(size=(n, 3)) * np.array([1.0, 10.0, 0.1])


def hsic(k, l):
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h)


def cka(a, b):
    k, l = a @ a.T, b @ b.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


out = {"n": n, "x": x.ravel().tolist(), "p": 7, "y": y.ravel().tolist(), "q": 5, "z": z.ravel().tolist(), "r": 3,
       "cka_xy": cka(x, y), "cka_xz": cka(x, z), "cka_yz": cka(y, z)}
with open(__file__.replace("make_cka_fixture.py", "cka.json"), "w") as f:
    json.dump(out, f)
print({k: v for k, v in out.items() if k.startswith("cka")})
