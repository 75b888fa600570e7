"""trunkguard: SIP trunk and link failover agent."""

__version__ = "0.1.0"
