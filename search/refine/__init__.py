"""Gradient refinement of a black-box trial's coefficients (``refine:`` in a space, ``search refine RUN_DIR``).

- :mod:`search.refine.documents`: (context, answer) pairs of the search / select documents of lm-eval tasks;
- :mod:`search.refine.linear`: the merge as a differentiable function of the searched coefficients;
- :mod:`search.refine.loss`: answer log-likelihood and prediction entropy through ``torch.func.functional_call``;
- :mod:`search.refine.run`: the optimisation, early stopping, and the refined trial recorded in the study.
"""
