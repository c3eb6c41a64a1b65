"""crmlab: a notebook workbench for customer-relationship analytics.

All logic lives in this package; the notebooks in ``notebooks/`` are thin
templates that call it. Modules, one per job: ``config``, ``exceptions``,
``schema``, ``sources``, ``engine``, ``synthetic``, ``quality``,
``segmentation``, ``lifecycle``, ``clv``, ``forecasting``, ``campaigns``,
``privacy``, ``charts``, ``report``, ``runner``, ``index``, ``schedule``,
``cli``.
"""

__version__ = "0.1.0"
