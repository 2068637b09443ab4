"""What the webhook outbox needs from storage. No logic here."""

from zope.interface import Attribute, Interface


class IWebhookStore(Interface):
    """Rules made through the API, the outbox and the dead-letter list.

    It follows `reactorapp.store.interfaces.IStore` and shares the hub's
    store where there is one: writes are only recorded, in order, in the
    reactor thread, and become durable with that store's batches, so a
    publish that wrote to the outbox is acknowledged once `pending_commit`
    fires. Reads see every write recorded before them. Delivery ids are
    chosen by the caller and never reused.

    Pick the one for a hub's store by adaptation: ``IWebhookStore(store)``
    (registered in `reactorapp.webhooks.sqlitestore` and
    `reactorapp.webhooks.memorystore`).
    """

    durable = Attribute("True if what is stored survives a restart.")

    def load():
        """Return a `WebhookState`: the stored rules, the highest delivery id
        in use, and each rule's count of pending deliveries. Called once at
        start-up, after the hub's store is loaded; may block."""

    def save_rule(rule):
        """Keep (insert or replace) a `WebhookRule`, secret included."""

    def delete_rule(name):
        """Forget a rule with its pending deliveries and dead letters."""

    def add(delivery):
        """Put a `Delivery` in the outbox."""

    def remove(delivery_id):
        """Take a delivered delivery out of the outbox."""

    def bury(dead_letter):
        """Move a `DeadLetter`'s delivery from the outbox (if it is there) to
        the dead-letter list."""

    def forget_dead(rule, count):
        """Drop the ``count`` oldest dead letters of ``rule`` (the list is
        bounded by --max-dead-letters)."""

    def revive(dead_id, delivery):
        """Replace dead letter ``dead_id`` by ``delivery`` (the same message
        under a new id) in the outbox."""

    def pending_commit():
        """None if every write so far is durable, else the
        `reactorapp.hub.commit.Commit` that makes them durable."""

    def sync():
        """None if every write so far is durable, else a Deferred that fires
        once it is (or fails if it cannot be)."""

    def pending(rule, after_id, limit):
        """A Deferred firing with up to ``limit`` outbox deliveries of
        ``rule`` with an id above ``after_id``, in id order."""

    def dead_letters(rule, after_id, limit):
        """A Deferred firing with up to ``limit`` `DeadLetter`s of ``rule``
        with an id above ``after_id``, oldest first."""

    def dead_letter(rule, dead_id):
        """A Deferred firing with one `DeadLetter` of ``rule``, or None."""
