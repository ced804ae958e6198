"""``sage report`` and ``sage export``: runs (an MLflow store, or a DomainBed folder) → DomainBed's model
selection → the paper's tables and figures → text, Markdown, LaTeX, CSV, JSON, HTML.

runs.py (collect) · selection.py (training / oracle / LOO) · dg.py (Table 1) · mtl.py (Table 2) ·
ablation.py (Fig. 3, App. F) · paper.py (the paper's numbers and their check) · figures.py · formats.py ·
domainbed.py (export) · build.py (the whole report).
"""
