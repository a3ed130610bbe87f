#!/usr/bin/env bash
# Debian packages for the training corpus (`make system-deps`): speech synthesisers from main, plus the
# MBROLA, SVOX Pico and RHVoice voices from contrib/non-free, whose components this enables in Debian's apt
# sources when they are missing (deb822 debian.sources or a one-line sources.list). The Asterisk prompts (real
# speech, the dev set dev-asterisk) are G.722, which ffmpeg decodes. `make data-uqm` fetches the non-free
# uqm-voice and uqm-content .debs itself (apt-get download, no root) once non-free is enabled here. Run as root.
set -euo pipefail
MAIN=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox
      ffmpeg asterisk-core-sounds-en-g722 asterisk-core-sounds-en)
NONFREE=(mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils rhvoice rhvoice-english)

deb822=/etc/apt/sources.list.d/debian.sources
if [ -f "$deb822" ]; then
    sed -i -E '/^Components:/{/contrib/!s/$/ contrib/; /non-free( |$)/!s/$/ non-free/}' "$deb822"
elif [ -f /etc/apt/sources.list ]; then
    sed -i -E '/^deb .*debian/{/contrib/!s/$/ contrib/; / non-free( |$)/!s/$/ non-free/}' /etc/apt/sources.list
fi
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${MAIN[@]}"
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${NONFREE[@]}"; then
    echo "warning: MBROLA/Pico/RHVoice voices not installable here; make data leaves those voices out" >&2
fi
