"""Mail rules at final delivery: what a user's active Sieve script decides for a message, carried out.

`engine.Rules` runs the script of each local account that has one (in a worker thread: the store is read
and the script may be long) and turns its `kartero.sieve.Outcome` into a `Plan`: the copies to store
(mailbox, flags, edited header), the addresses to redirect to, a rejection, a vacation reply to send and
the duplicate ids to remember. Intake builds the deliveries from the plans and commits them together;
replies (vacation, rejection notices) are built here (`vacation.py`, `reject.py`) and sent by intake
after the commit, with the null sender.
"""
