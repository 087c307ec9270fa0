//! The XML examples of `public_service.md`, copied verbatim (the imgtxt one
//! keeps its extra indentation, all keep `</MsgID>`).

pub const TEXT: &str = r#"<xml>
 <ToUserName><![CDATA[toUserId]]></ToUserName>
 <FromUserName><![CDATA[fromUserName]]></FromUserName>
 <CreateTime>134223445860</CreateTime>
 <MsgType><![CDATA[text]]></MsgType>
 <Content><![CDATA[content]]></Content>
 <MsgId>msgId</MsgID>
</xml>"#;

pub const IMAGE: &str = r#"<xml>
 <ToUserName><![CDATA[toUserName]]></ToUserName>
 <FromUserName><![CDATA[fromUserName]]></FromUserName>
 <CreateTime>134223445860</CreateTime>
 <MsgType><![CDATA[image]]></MsgType>
 <PicUrl><![CDATA[this is a url]]></PicUrl>
 <MsgId>msgId</MsgID>
</xml>"#;

pub const VOICE: &str = r#"<xml>
 <ToUserName><![CDATA[toUserName]]></ToUserName>
 <FromUserName><![CDATA[fromUserName]]></FromUserName>
 <CreateTime>134223445860</CreateTime>
 <MsgType><![CDATA[voice]]></MsgType>
 <VoiceUrl><![CDATA[this is url]]></VoiceUrl>
 <Format><![CDATA[AMR]]></Format>
 <MsgId>msgId</MsgID>
</xml>"#;

pub const LOCATION: &str = r#"<xml>
 <ToUserName><![CDATA[toUserName]]></ToUserName>
 <FromUserName><![CDATA[fromUserName]]></FromUserName>
 <CreateTime>134223445860</CreateTime>
 <MsgType><![CDATA[location]]></MsgType>
 <Location_X>15.501</Location_X>
 <Location_Y>142.324</Location_Y>
 <Label><![CDATA[POI信息]]></Label>
 <MsgId>msgId</MsgID>
</xml>"#;

pub const IMGTXT: &str = r#" <xml>
  <ToUserName><![CDATA[toUserName]]></ToUserName>
  <FromUserName><![CDATA[fromUserName]]></FromUserName>
  <CreateTime>134223445860</CreateTime>
  <MsgType><![CDATA[imgtxt]]></MsgType>
  <Title><![CDATA[title]]></Title>
  <Description><![CDATA[description]]></Description>
  <PicUrl><![CDATA[picUrl]]></PicUrl>
  <Url><![CDATA[url]]></Url>
  <MsgId>msgId</MsgID>
 </xml>"#;

pub const SUBSCRIBE: &str = r#"<xml>
 <ToUserName><![CDATA[toUserName]]></ToUserName>
 <FromUserName><![CDATA[fromUserName]]></FromUserName>
 <CreateTime>134223445860</CreateTime>
 <MsgType><![CDATA[event]]></MsgType>
 <Event><![CDATA[subscribe]]></Event>
</xml>"#;

pub const UNSUBSCRIBE: &str = r#"<xml>
 <ToUserName><![CDATA[toUserName]]></ToUserName>
 <FromUserName><![CDATA[fromUserName]]></FromUserName>
 <CreateTime>134223445860</CreateTime>
 <MsgType><![CDATA[event]]></MsgType>
 <Event><![CDATA[unsubscribe]]></Event>
</xml>"#;
