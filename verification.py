"""The seed's `verification.py`, kept where its users look: the protocol lives in eval/verification.py.

    from verification import evaluate
    tpr, fpr, accuracy, val, val_std, far = evaluate(embeddings, actual_issame, num_folds=10)
"""

from eval.verification import evaluate, verify

__all__ = ["evaluate", "verify"]
