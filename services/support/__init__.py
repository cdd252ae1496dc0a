"""The support service: managed newsgroup questions left unanswered for two business days are
escalated to Microsoft Dynamics support professionals."""
