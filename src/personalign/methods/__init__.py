"""Personalization methods: one file per method, all behind `methods.base.Personalizer`."""
