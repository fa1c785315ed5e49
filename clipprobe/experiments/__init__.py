"""Experiments: training several models under controlled conditions and comparing their bias curves."""
