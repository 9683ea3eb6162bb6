"""The helpdesk's knowledge: issue types with their category, owning team, severity and phrasings.

`generate.py` combines these with people, places, urgency cues and typos into tickets; the labels
follow Northwind's own triage rules (in `triage`), which a general model cannot know.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES = ("access", "hardware", "network", "software", "email", "security", "printing", "data")
TEAMS = ("identity-access", "endpoint-support", "network-ops", "desktop-apps", "business-apps", "messaging",
         "secops", "print-services", "storage-backup")
PRIORITIES = ("P1", "P2", "P3", "P4")

SYSTEM_PROMPT = (
    "You are the IT helpdesk triage assistant at Northwind. Read the ticket and reply with only a JSON "
    'object with exactly these keys: "category" (one of: ' + ", ".join(CATEGORIES) + '), "priority" '
    '(P1 = critical, P2 = high, P3 = normal, P4 = low), "team" (one of: ' + ", ".join(TEAMS) + '), and '
    '"summary" (one sentence).'
)


@dataclass(frozen=True)
class Issue:
    """One kind of problem. `severity`: blocked, degraded, request or incident (security)."""

    noun: str  # the summary's noun phrase, e.g. "VPN connection failure"
    category: str
    team: str
    severity: str
    phrasings: tuple[str, ...]
    widespread: bool = False  # can affect a whole team or site


ISSUES: tuple[Issue, ...] = (
    # access
    Issue("Password reset request", "access", "identity-access", "blocked", (
        "I forgot my password and now I'm locked out", "need a password reset, can't log into my laptop",
        "my AD password expired over the weekend and I can't sign in", "pls reset my pwd, locked out after too many attempts",
    )),
    Issue("MFA prompt not arriving", "access", "identity-access", "blocked", (
        "I'm not getting the MFA push on my phone anymore", "the Authenticator app stopped sending me codes",
        "got a new phone and now MFA doesn't work", "Okta Verify never shows the push notification",
    )),
    Issue("Account locked out", "access", "identity-access", "blocked", (
        "my account is locked out", "it says 'your account has been locked, contact your administrator'",
        "AD account keeps locking every 10 minutes", "locked out of SSO again",
    )),
    Issue("Shared drive access request", "access", "identity-access", "request", (
        "can I get access to the Finance share (\\\\fs01\\finance)", "please add me to the Marketing SharePoint site",
        "need read access to the Q3 planning folder on the S: drive", "request: write permissions on the HR team drive",
    )),
    Issue("SSO login failure on a web app", "access", "identity-access", "blocked", (
        "SSO into Workday just loops back to the login page", "getting 'SAML response invalid' when I open Concur",
        "single sign-on to the expenses portal fails with error AADSTS50105", "can't SSO into Confluence, says user not assigned",
    ), widespread=True),
    # hardware
    Issue("Cracked laptop screen", "hardware", "endpoint-support", "degraded", (
        "dropped my laptop and the screen is cracked", "there's a big crack across my ThinkPad display",
        "laptop screen has lines all over it after it fell", "screen on my Dell is broken, only half of it shows anything",
    )),
    Issue("Laptop not powering on", "hardware", "endpoint-support", "blocked", (
        "my laptop won't turn on at all", "laptop is dead, no lights when I press the power button",
        "MacBook doesn't boot, just a black screen", "pc stuck on BIOS screen and won't start windows",
    )),
    Issue("Docking station not detecting monitors", "hardware", "endpoint-support", "degraded", (
        "my dock doesn't detect the external monitors anymore", "the docking station isn't working, no second screen",
        "USB-C dock stopped charging my laptop and monitors are black", "monitors flicker and disconnect when I use the dock",
    )),
    Issue("Replacement keyboard or mouse request", "hardware", "endpoint-support", "request", (
        "can I get a new keyboard, some keys are stuck", "my mouse is dying, need a replacement",
        "requesting an ergonomic keyboard per my DSE assessment", "need a new headset, the mic stopped working",
    )),
    Issue("Laptop battery draining fast", "hardware", "endpoint-support", "degraded", (
        "battery drains from 100 to 0 in about an hour", "laptop battery is swollen and the trackpad is lifting",
        "my laptop only lasts 40 minutes unplugged", "battery says 'consider replacing'",
    )),
    Issue("Blue screen crashes", "hardware", "endpoint-support", "degraded", (
        "getting a BSOD a few times a day, CRITICAL_PROCESS_DIED", "laptop keeps blue screening when I undock",
        "random bluescreens with MEMORY_MANAGEMENT", "pc crashes with a blue screen whenever I open Teams",
    )),
    # network
    Issue("VPN connection failure", "network", "network-ops", "blocked", (
        "VPN won't connect", "GlobalProtect keeps saying 'gateway unreachable'", "can't get on the vpn from home",
        "AnyConnect fails with 'login failed' even though my password is right",
    ), widespread=True),
    Issue("Wi-Fi connectivity problem", "network", "network-ops", "degraded", (
        "Wi-Fi keeps dropping", "corporate wifi (NW-Corp) disconnects every few minutes",
        "can't connect to the guest wifi in the meeting rooms", "wireless is super slow and drops calls",
    ), widespread=True),
    Issue("Wired network outage", "network", "network-ops", "blocked", (
        "the network ports at our desks are dead", "no internet on wired connections, says 'unidentified network'",
        "ethernet isn't getting an IP address, looks like DHCP", "the switch in the comms cupboard has all red lights",
    ), widespread=True),
    Issue("Slow network performance", "network", "network-ops", "degraded", (
        "everything on the network is really slow today", "file transfers to the file server crawl at 1 MB/s",
        "massive latency on RDP sessions", "internet is painfully slow, pages time out",
    ), widespread=True),
    Issue("Firewall rule change request", "network", "network-ops", "request", (
        "need port 5432 opened from the app subnet to the new DB server", "please whitelist vendor IP 203.0.113.40 on the firewall",
        "requesting a firewall change for the SFTP integration, CAB ticket attached", "can you allow outbound 8443 to the partner API",
    )),
    # software
    Issue("Software installation request", "software", "desktop-apps", "request", (
        "can you install Visio on my machine", "need Python and VS Code installed, I'm not admin",
        "please push Adobe Acrobat Pro to my laptop", "request to install Power BI Desktop from the Company Portal, it's not listed",
    )),
    Issue("Application crashing on launch", "software", "desktop-apps", "degraded", (
        "Excel crashes every time I open it", "Teams closes itself right after launching",
        "Chrome keeps crashing since the update", "Zoom won't start, it just spins and quits",
    ), widespread=True),
    Issue("Failed software update", "software", "desktop-apps", "degraded", (
        "Windows update failed with error 0x80070002 and keeps retrying", "Intune says my device is non-compliant because of a pending update",
        "Office update stuck at 0%", "macOS update won't install, not enough space apparently",
    )),
    Issue("License expired", "software", "desktop-apps", "blocked", (
        "Adobe says my license has expired", "AutoCAD says 'no license available'",
        "getting 'product deactivated' in Office", "my Tableau license ran out and I can't open dashboards",
    )),
    Issue("SAP transaction error", "software", "business-apps", "blocked", (
        "SAP gives me 'no authorization for transaction ME21N'", "SAP GUI dumps when I post invoices in MIRO",
        "can't run the month-end report in SAP, ABAP runtime error", "SAP is throwing a short dump on VA01",
    ), widespread=True),
    Issue("Salesforce access or sync problem", "software", "business-apps", "degraded", (
        "Salesforce won't sync my Outlook contacts", "opportunities I create in Salesforce vanish after saving",
        "Salesforce dashboard shows 'insufficient privileges'", "the Salesforce app on my phone won't log in",
    ), widespread=True),
    Issue("Jira or Confluence problem", "software", "business-apps", "degraded", (
        "Jira board takes forever to load", "Confluence pages show a 500 error",
        "can't create issues in the PROJ Jira project anymore", "Jira automation rules stopped firing",
    ), widespread=True),
    # email
    Issue("Outlook not receiving email", "email", "messaging", "blocked", (
        "I haven't received any email since yesterday", "Outlook is stuck on 'Disconnected'",
        "emails from external senders aren't arriving", "my inbox stopped updating, Outlook says 'Trying to connect'",
    ), widespread=True),
    Issue("Shared mailbox access request", "email", "messaging", "request", (
        "please give me access to the support@ shared mailbox", "need send-as rights on the invoices mailbox",
        "add me to the recruiting shared inbox please", "can't see the team's shared mailbox in Outlook after the migration",
    )),
    Issue("Distribution list change", "email", "messaging", "request", (
        "please add the new starters to the all-london DL", "need a new distribution list for the project team",
        "remove leavers from the sales-emea mailing list", "who owns the finance-all distribution group, I need to be added",
    )),
    Issue("Calendar sync problem", "email", "messaging", "degraded", (
        "my calendar isn't syncing to my phone", "meeting invites show up twice in Outlook",
        "can't open shared calendars, Outlook freezes", "delegates can't see my calendar anymore",
    )),
    Issue("Mailbox full", "email", "messaging", "degraded", (
        "my mailbox is full and I can't send anything", "getting 'mailbox over quota' warnings",
        "Outlook says my mailbox has exceeded the size limit", "can you increase my mailbox quota",
    )),
    # security
    Issue("Phishing email reported", "security", "secops", "report", (
        "got a suspicious email asking me to verify my payroll details", "I think this email is phishing, sender is a lookalike domain",
        "received a weird DocuSign link from someone I don't know", "email says my mailbox will be deleted unless I click, looks fake",
    )),
    Issue("Credentials entered on a phishing page", "security", "secops", "incident", (
        "I clicked a link in an email and typed my password before I realised it was fake",
        "entered my O365 credentials into a page that looked like Microsoft, now I'm worried",
        "oops, I logged in through a link in a 'shared file' email and it was a scam",
        "I gave my MFA code to someone who called claiming to be IT",
    )),
    Issue("Suspected malware infection", "security", "secops", "incident", (
        "my files all got renamed with a .locked extension", "antivirus popped up saying it quarantined a trojan and the PC is acting strange",
        "there's a ransom note on my desktop", "Defender keeps alerting about Emotet on my machine",
    )),
    Issue("Lost or stolen device", "security", "secops", "lost", (
        "I left my laptop on the train", "my work phone was stolen last night",
        "lost my laptop bag at the airport", "can't find my company iPad, I think it was stolen from my car",
    )),
    # printing
    Issue("Printer offline", "printing", "print-services", "degraded", (
        "the printer on our floor shows offline", "can't print, the queue just says 'error - printing'",
        "print jobs disappear and nothing comes out", "follow-me printing isn't releasing my jobs at the MFD",
    ), widespread=True),
    Issue("Printer toner or paper jam", "printing", "print-services", "request", (
        "the printer by the kitchen is out of toner", "paper jam in tray 2 that I can't clear",
        "printer says 'replace drum unit'", "the big colour printer needs toner, it's printing streaks",
    )),
    Issue("Scanner to email not working", "printing", "print-services", "degraded", (
        "scan to email stopped working on the copier", "the MFD says 'SMTP error' when I scan",
        "scanned documents never arrive in my inbox", "scan to folder fails with 'path not found'",
    ), widespread=True),
    # data
    Issue("Deleted file restore request", "data", "storage-backup", "request", (
        "I accidentally deleted a folder on the shared drive, can you restore it",
        "need yesterday's version of a spreadsheet I overwrote", "please restore files from backup, the project folder is empty",
        "deleted an important file from OneDrive more than 90 days ago",
    )),
    Issue("Shared drive full", "data", "storage-backup", "blocked", (
        "the team drive is full and we can't save anything", "S: drive says 'insufficient disk space'",
        "our project share ran out of space", "can't upload to the department share, quota exceeded",
    ), widespread=True),
    Issue("OneDrive sync error", "data", "storage-backup", "degraded", (
        "OneDrive has a red cross and isn't syncing", "files stuck on 'sync pending' in OneDrive",
        "OneDrive keeps creating duplicate files with my PC name", "SharePoint library won't sync to my laptop",
    )),
)


def triage(issue: Issue, scope: str, urgent: bool) -> str:
    """Northwind's priority rules: severity, then one step up for a wide scope or a deadline/VIP."""
    if issue.severity == "incident":
        return "P1"
    if issue.severity == "lost":
        return "P2"
    if issue.severity == "report":
        return "P3"
    if issue.severity == "request":
        return "P3" if urgent else "P4"
    level = {"blocked": 2, "degraded": 3}[issue.severity]
    if scope != "me":
        level -= 1
    if urgent:
        level -= 1
    return f"P{max(level, 1)}"
