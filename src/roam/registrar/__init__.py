"""The third unit that lets units find each other after both have moved
(figure 5, claims 16-21): the built-in registrar, and SIP registrars."""
