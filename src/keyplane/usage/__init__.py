"""Metering: usage records, the price table and costs in integer micro-dollars."""
