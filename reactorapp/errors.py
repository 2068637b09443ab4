"""What stops the hub from starting until the operator acts.

The root of `reactorapp.config.ConfigError` (a setting) and
`reactorapp.store.interfaces.StoreError` (the data directory), so that
`twistd` can show either as one sentence without the settings knowing about
the store, or the store about the settings.
"""


class SetupError(Exception):
    """Something the operator has to fix before the hub can run; the message
    is one sentence."""
