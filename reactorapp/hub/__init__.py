"""The protocol-agnostic core: messages, topics, subscriptions, retained messages."""
