"""The drop generator: monthly drops of a streaming business, seeded from real customers.

Month 0's subscribers and the labels of period 0 are the IBM Telco customers and their real churn
outcomes. Later months come from a hidden churn hazard fitted to those customers plus simulated
behaviour: a latent engagement per user that drives sessions and watch time, and exogenous causes
(rebuffering, failed payments, support tickets) that raise the hazard. Each user's true churn
probability per period goes to ``oracle/`` beside the drops, never inside them.

Layout: ``customers`` (real-customer loading), ``hazard`` (hazard fitting), ``population`` and
``simulation`` (the monthly state transition and its events), ``writers`` (CSV and manifest), and
``run`` with :func:`~streamflow.drops.generator.run.generate`, which ``streamflow generate`` calls.
"""
