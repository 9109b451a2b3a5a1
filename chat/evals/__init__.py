"""Evaluations: configurations answer rubric tasks, a judge checks them, a report compares them."""
