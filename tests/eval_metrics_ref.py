"""Reference metrics for tests/eval_metrics.rs, from scikit-learn and scipy.

Reads a JSON list of cases ({"gold": [0|1], "answer": [1|0|"parse"|"cut"|"escalate"],
"p": [float|null], "target_recall", "resamples", "seed"}) and prints, for
each, the metrics as `safeguard eval --json` reports them. An unreadable
answer is a third predicted class (2) that never matches a gold label.
Undefined values are null. Bootstrap intervals resample with the SplitMix64
stream the Rust code documents and take numpy's percentiles of sklearn's
metrics on the resampled lists.
"""

import json
import sys
import warnings

import numpy as np
from scipy.stats import binomtest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    cohen_kappa_score,
    matthews_corrcoef,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

warnings.filterwarnings("ignore")
MASK = (1 << 64) - 1
BINS = 10


def splitmix(seed):
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        yield z ^ (z >> 31)


def num(x):
    return None if x is None or np.isnan(x) else float(x)


def wilson(k, n):
    if n == 0:
        return {"value": None, "low": None, "high": None}
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"value": k / n, "low": ci.low, "high": ci.high}


def bootstrapped(gold, pred, p):
    """Metrics that get a bootstrap interval, on one list of examples."""
    out = dict.fromkeys(["f1", "balanced_accuracy", "mcc", "kappa", "roc_auc", "average_precision", "brier", "ece"])
    if len(gold) == 0:
        return out
    y, yp = np.array(gold), np.array(pred)
    _, _, f1, _ = precision_recall_fscore_support(y, yp, labels=[1], average=None, zero_division=np.nan)
    out["f1"] = num(f1[0])
    both = len(set(gold)) == 2
    out["balanced_accuracy"] = num(balanced_accuracy_score(y, yp)) if both else None
    out["mcc"] = num(matthews_corrcoef(y, yp)) if both and len(set(pred)) > 1 else None
    out["kappa"] = num(cohen_kappa_score(y, yp, labels=[0, 1, 2, 3]))
    scored = [(g, s) for g, s in zip(gold, p) if s is not None]
    ys = np.array([g for g, _ in scored])
    ps = np.array([s for _, s in scored], dtype=float)
    if len(scored) == 0:
        return out
    if len(set(ys.tolist())) == 2:
        out["roc_auc"] = float(roc_auc_score(ys, ps))
    if ys.sum() > 0:
        out["average_precision"] = float(average_precision_score(ys, ps))
    out["brier"] = float(brier_score_loss(ys, ps, labels=[0, 1]))
    prob_true, prob_pred = calibration_curve(ys, ps, n_bins=BINS, strategy="uniform", pos_label=1)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, BINS + 1)[1:-1], ps), minlength=BINS)
    weights = counts[counts > 0] / len(ps)
    out["ece"] = float(np.sum(weights * np.abs(prob_true - prob_pred)))
    return out


def reference(case):
    gold = case["gold"]
    pred = [{1: 1, 0: 0, "parse": 2, "cut": 2, "escalate": 3}[a] for a in case["answer"]]
    p = case["p"]
    n = len(gold)
    out = {"n": n}
    out["parse_failures"] = case["answer"].count("parse")
    out["cut_off"] = case["answer"].count("cut")
    out["escalated"] = case["answer"].count("escalate")
    out["confusion"] = {
        "tp": sum(g == 1 and a == 1 for g, a in zip(gold, pred)),
        "fp": sum(g == 0 and a == 1 for g, a in zip(gold, pred)),
        "tn": sum(g == 0 and a == 0 for g, a in zip(gold, pred)),
        "fn": sum(g == 1 and a == 0 for g, a in zip(gold, pred)),
        "violating_unread": sum(g == 1 and a == 2 for g, a in zip(gold, pred)),
        "safe_unread": sum(g == 0 and a == 2 for g, a in zip(gold, pred)),
        "violating_escalated": sum(g == 1 and a == 3 for g, a in zip(gold, pred)),
        "safe_escalated": sum(g == 0 and a == 3 for g, a in zip(gold, pred)),
    }
    c = out["confusion"]
    if n:
        assert abs(accuracy_score(gold, pred) - (c["tp"] + c["tn"]) / n) < 1e-12
        prec, rec, _, _ = precision_recall_fscore_support(gold, pred, labels=[1, 0], average=None, zero_division=np.nan)
        # sklearn's precision, recall and specificity are the proportions Wilson's interval is taken of.
        for value, (k, m) in [
            (prec[0], (c["tp"], c["tp"] + c["fp"])),
            (rec[0], (c["tp"], sum(gold))),
            (rec[1], (c["tn"], n - sum(gold))),
        ]:
            assert (np.isnan(value) and m == 0) or abs(value - k / m) < 1e-12, (value, k, m)
    out["accuracy"] = wilson(c["tp"] + c["tn"], n)
    out["precision"] = wilson(c["tp"], c["tp"] + c["fp"])
    out["recall"] = wilson(c["tp"], sum(gold))
    out["specificity"] = wilson(c["tn"], n - sum(gold))

    point = bootstrapped(gold, pred, p)
    draws = {k: [] for k in point}
    if n:
        rng = splitmix(case["seed"])
        for _ in range(case["resamples"]):
            idx = [(next(rng) * n) >> 64 for _ in range(n)]
            sample = bootstrapped([gold[i] for i in idx], [pred[i] for i in idx], [p[i] for i in idx])
            for k, v in sample.items():
                if v is not None:
                    draws[k].append(v)
    for k, v in point.items():
        low, high = np.percentile(draws[k], [2.5, 97.5]) if draws[k] else (None, None)
        out[k] = {"value": v, "low": num(low), "high": num(high)}

    scored = [(g, s) for g, s in zip(gold, p) if s is not None]
    out["scored"], out["unscored"] = len(scored), n - len(scored)
    ys = np.array([g for g, _ in scored])
    ps = np.array([s for _, s in scored], dtype=float)
    curve, best, at_target, bins = [], None, None, []
    if len(scored):
        precision, recall, thresholds = precision_recall_curve(ys, ps)
        fpr, _, roc_thresholds = roc_curve(ys, ps, drop_intermediate=False)
        assert np.array_equal(roc_thresholds[1:], thresholds[::-1])
        for i, t in enumerate(thresholds[::-1]):
            j = len(thresholds) - 1 - i
            # With no violating example sklearn sets recall to 1; it is undefined.
            rc = num(recall[j]) if ys.sum() > 0 else None
            curve.append({"threshold": float(t), "precision": float(precision[j]), "recall": rc, "fpr": num(fpr[i + 1])})
        if ys.sum() > 0:
            points = [(pt["threshold"], pt["precision"], pt["recall"]) for pt in curve]
            f1s = [2 * pr * rc / (pr + rc) if pr + rc > 0 else 0.0 for _, pr, rc in points]
            top = max(f1s)
            t, pr, rc = max((pt for pt, f in zip(points, f1s) if f == top), key=lambda x: x[0])
            best = {"threshold": t, "precision": pr, "recall": rc, "f1": top}
            target = case["target_recall"]
            reach = [(pt, f) for pt, f in zip(points, f1s) if pt[2] >= target]
            (t, pr, rc), f = max(reach, key=lambda x: x[0][0])
            at_target = {"threshold": t, "precision": pr, "recall": rc, "f1": f}
        edges = np.linspace(0, 1, BINS + 1)
        counts = np.bincount(np.searchsorted(edges[1:-1], ps), minlength=BINS)
        prob_true, prob_pred = calibration_curve(ys, ps, n_bins=BINS, strategy="uniform", pos_label=1)
        filled = iter(zip(prob_true, prob_pred))
        for b in range(BINS):
            share, mean = next(filled) if counts[b] else (None, None)
            bins.append({
                "low": float(edges[b]), "high": float(edges[b + 1]), "count": int(counts[b]),
                "mean_p": num(mean), "violating": num(share),
            })
    out["curve"] = curve
    out["best_f1"] = best
    out["target_recall"] = case["target_recall"]
    out["at_target_recall"] = at_target
    out["reliability"] = bins
    return out


print(json.dumps([reference(case) for case in json.load(open(sys.argv[1]))]))
