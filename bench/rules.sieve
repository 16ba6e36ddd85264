# A typical user's rules (bench/smtp_accept.py --sieve): none matches the bench's mail, so every test is
# evaluated and the message is kept in INBOX (the bench reads it back there).
require ["fileinto", "mailbox", "imap4flags", "variables", "envelope", "subaddress", "regex"];

if header :contains "list-id" ["<dev.lists.example.org>", "<announce.example.org>"] {
    fileinto :create "Lists/dev";
} elsif address :domain :is "from" ["newsletter.example.net", "shop.example.com"] {
    fileinto :create "Newsletters";
} elsif header :regex "subject" "^\\[(invoice|receipt)[ -]#?[0-9]+\\]" {
    fileinto :create :flags "$Bills" "Bills";
} elsif envelope :detail "to" "spam" {
    discard;
} elsif header :matches "x-spam-score" "*.*" {
    fileinto :create "Junk";
} elsif header :contains "from" "boss@example.org" {
    addflag "\\Flagged";
}
if header :matches "subject" "*urgent*" { set "u" "yes"; }
