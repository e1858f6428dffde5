"""Money: credit lots, holds and settlement, budgets, the usage limit — in integer micro-dollars."""
