"""Verification: the 10-fold pairs protocol (pure numpy), pairs files, reports and plots."""
