"""End of turn: has the user finished, or only paused? A model's probability combined with the silence."""
