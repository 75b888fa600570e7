"""Synthetic calls: a real SIP call with media, placed by pjsua2 in a child process."""
