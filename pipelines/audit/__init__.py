"""Answers for auditors: the audit trail and training log (:mod:`~pipelines.audit.trail`),
the tamper-evident access and decision log (:mod:`~pipelines.audit.ledger`)."""
