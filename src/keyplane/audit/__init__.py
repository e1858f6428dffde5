"""The audit log: who changed what, from where, and when — never a secret (BRIEF C7)."""
