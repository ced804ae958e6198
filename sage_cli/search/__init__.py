"""Random hyper-parameter search (DomainBed's protocol): the draws of a sweep (``draws``) from the distributions
declared beside each setting (``settings/distributions.py``), and early stopping of hopeless draws (``prune``)."""
