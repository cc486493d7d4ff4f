"""Adapters: everything that speaks to the outside (PostgreSQL, NATS, Shopify, POS, ERP)."""
