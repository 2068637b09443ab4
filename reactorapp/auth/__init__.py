"""Who may connect, what they may touch, and how much they may ask for."""
