"""Evaluation: what the answers say — scores, routing headroom, gate statistics, refusals, probes, the report."""
