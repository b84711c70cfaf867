"""The coordination recipes; each is made by a :class:`geventc.Connector` factory."""
