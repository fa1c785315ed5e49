"""Evaluation: the result record, the one evaluation runner, clipprobe eval and clipprobe report."""
