"""The paper's analysis as code: the two terms of Theorem 1 for any model and set of per-distribution losses
(:mod:`.terms`, on Hessian-vector products from :mod:`.hessian`), ``sage diagnose`` on a run's checkpoint
(:mod:`.diagnose`), and the paper's worked examples: App. C's two-domain linear problem (:mod:`.toy2d`),
App. D's rescaled MLP (:mod:`.scale`) and Fig. 2's two-minimum landscape (:mod:`.landscape`)."""
